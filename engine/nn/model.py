"""The SDF and colour networks (NeuS2 layout) and NeuS's learned sharpness.

Positions are in the engine's normalised space, the unit sphere inside [-1, 1]^3.
"""
import dataclasses
import math

import torch
from torch import nn

from .background import BackgroundNeRF
from .encoding import OFFSETS, HashGrid
from .precision import reduced_precision

# Numerical gradient taps (Neuralangelo), unit offsets: 6 central differences along the axes, or the 4
# corners of a regular tetrahedron (encoding.OFFSETS, the same order as the encoding's taps).
TAP_OFFSETS = {count: torch.tensor(offsets, dtype=torch.float32) for count, offsets in OFFSETS.items()}


class SDFNetwork(nn.Module):
    """Hash grid + a small MLP: position -> (signed distance, geometry features)."""

    def __init__(self, enc_cfg, net_cfg):
        super().__init__()
        self.grid = HashGrid(enc_cfg)
        self.geo_features = net_cfg.geo_features
        dims = [3 + self.grid.output_dim] + [net_cfg.sdf_hidden] * net_cfg.sdf_layers + [1 + net_cfg.geo_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.activation = nn.Softplus(beta=100)
        self._geometric_init(net_cfg.init_radius)

    def _geometric_init(self, radius):
        """Start as the SDF of a sphere (Atzmon & Lipman's initialisation, as NeuS does)."""
        for i, layer in enumerate(self.layers):
            out_dim, in_dim = layer.weight.shape
            if i == len(self.layers) - 1:
                nn.init.normal_(layer.weight, mean=math.sqrt(math.pi) / math.sqrt(in_dim), std=1e-4)
                nn.init.constant_(layer.bias, -radius)
            else:
                nn.init.normal_(layer.weight, 0.0, math.sqrt(2) / math.sqrt(out_dim))
                nn.init.constant_(layer.bias, 0.0)
                if i == 0:  # the encoding starts silent; the grid learns detail on top of the sphere
                    nn.init.constant_(layer.weight[:, 3:], 0.0)

    def forward(self, x):
        """x: (N, 3) in [-1, 1] -> sdf (N,), features (N, geo_features)."""
        return self.decode(x, self.grid((x + 1) * 0.5))

    def value(self, x):
        """SDF values alone (N,), for queries that need no features: with the Triton backend and outside
        autograd, the encoding and the MLP run as one kernel (engine.nn.hashgrid_triton.sdf_values)."""
        hidden = self.layers[0].weight.shape[0]
        if (self.grid.uses_triton() and not torch.is_grad_enabled() and len(self.layers) == 2
                and hidden & (hidden - 1) == 0):
            from .hashgrid_triton import sdf_values
            return sdf_values(x, self.grid._triton_lookup(), self.grid.triton_layout(), self.grid.active_levels,
                              self.layers[0], self.layers[1])
        return self(x)[0]

    def decode(self, x, encoded):
        """The MLP on the positions and their encoding."""
        h = torch.cat([x, encoded], -1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h[:, 0], h[:, 1:]

    def finest_cell(self):
        """Edge, in normalised units, of a cell of the finest active level."""
        return 2.0 / self.grid.resolutions[self.grid.active_levels - 1]

    def with_gradient(self, x, eps, mode="numerical", curvature=False, taps=6):
        """sdf, gradient (N, 3), features, and the Laplacian (or None) at x.

        numerical: differences with step eps from `taps` taps (6: central differences along the axes;
        4: Neuralangelo's tetrahedral taps, 5 SDF evaluations a point instead of 7), the Laplacian from
        the same taps; analytic: autograd with create_graph (double backward through the hash grid), and
        no Laplacian: the grid's trilinear interpolation has no second derivative along an axis, so an
        analytic curvature would see the MLP alone (the trainer says the curvature loss is off).
        """
        if mode == "analytic":
            # The double backward needs the torch encoding (the Triton kernels' backward is not differentiable).
            with torch.enable_grad(), self.grid.reference():
                if not x.requires_grad:  # positions that carry a graph (a frame's motion) keep it
                    x = x.detach().requires_grad_(True)
                sdf, feat = self(x)
                grad = torch.autograd.grad(sdf.sum(), x, create_graph=True)[0]
            return sdf, grad, feat, None
        # The point and its taps encoded together (one kernel launch with the Triton backend).
        points = torch.cat([x, tap_points(x, eps, taps)], 0)
        values, extra = self.decode(points, self.grid.encode_taps((x + 1) * 0.5, eps * 0.5, taps))
        sdf, features, grad, laplacian = differences(values, extra, x.shape[0], eps, curvature, taps)
        return sdf, grad, features, laplacian


def tap_points(x, eps, taps=6):
    """The taps of each point at distance eps (`taps`: 6 axis or 4 tetrahedral), tap-major (taps N, 3)."""
    return (x[None] + eps * TAP_OFFSETS[taps].to(x)[:, None, :]).reshape(-1, 3)


def central_differences(fn, x, eps, curvature=False, taps=6):
    """Value, extra outputs, gradient and Laplacian of `fn` at x from its taps at distance eps.

    `fn` maps (N, 3) points to (values (N,), extra (N, ...)); it is called once on the points and their
    taps together. 6 taps: errors O(eps^2), exact for quadratics; 4 taps: the Laplacian as exact, the
    gradient off by O(eps) times the mixed second derivatives (a tetrahedron is not symmetric about its
    centre), as in Neuralangelo.
    """
    values, extra = fn(torch.cat([x, tap_points(x, eps, taps)], 0))
    return differences(values, extra, x.shape[0], eps, curvature, taps)


def differences(values, extra, n, eps, curvature, taps=6):
    """(value, extra, gradient, Laplacian) from values at [points; taps] (see central_differences).

    6 taps: (f(x + eps e_i) - f(x - eps e_i)) / 2 eps, and the Laplacian (sum - 6 f) / eps^2. 4 taps at
    x + eps v_k (v_k: unit tetrahedron corners, sum v_k = 0, sum v_k v_k^T = 4/3 I): the gradient
    3/4 sum f_k v_k / eps and the Laplacian 3/2 (sum f_k - 4 f) / eps^2 (Taylor to second order)."""
    center, tap_values = values[:n], values[n:].view(taps, n)
    if taps == 6:
        grad = torch.stack([tap_values[0] - tap_values[1], tap_values[2] - tap_values[3],
                            tap_values[4] - tap_values[5]], -1) / (2 * eps)
        laplacian = (tap_values.sum(0) - 6 * center) / eps ** 2 if curvature else None
    else:
        grad = 0.75 * (tap_values.t() @ TAP_OFFSETS[4].to(tap_values)) / eps
        laplacian = 1.5 * (tap_values.sum(0) - 4 * center) / eps ** 2 if curvature else None
    return center, extra[:n], grad, laplacian


class ColorNetwork(nn.Module):
    """(geometry features, normal, view direction[, appearance code]) -> RGB in [0, 1].

    With `appearance_views` > 0 it holds Neuralangelo's per-image appearance embedding: one learned
    row of net_cfg.appearance_dim numbers per training view (zeros at first: the plain network),
    concatenated to the MLP's input, so that exposure and white balance that change from photograph
    to photograph are explained here and not by the geometry (the SDF network never sees it). Samples
    with no training view (held-out views, meshes, previews) take the mean of the rows."""

    amp_dtype = None  # set by SDFModel.set_mixed_precision

    def __init__(self, net_cfg, appearance_views=0):
        super().__init__()
        extra = net_cfg.appearance_dim if appearance_views else 0
        dims = [net_cfg.geo_features + 6 + extra] + [net_cfg.color_hidden] * net_cfg.color_layers + [3]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*layers[:-1])
        self.appearance = nn.Parameter(torch.zeros(appearance_views, extra)) if appearance_views else None

    def appearance_codes(self, views, count):
        """(count, appearance_dim) codes: the rows of `views` (training view indices), or the mean
        row for every sample when `views` is None."""
        if views is None:
            return self.appearance.mean(0).expand(count, -1)
        return self.appearance[views]

    def forward(self, features, normals, dirs, views=None):
        """`views`: each sample's training view index (N,), or None (the mean appearance); ignored
        without an appearance embedding."""
        inputs = [features, normals, dirs]
        if self.appearance is not None:
            inputs.append(self.appearance_codes(views, features.shape[0]).to(features.dtype))
        with reduced_precision(self, features):
            logits = self.mlp(torch.cat(inputs, -1))
        return torch.sigmoid(logits.float())


class Sharpness(nn.Module):
    """NeuS's inverse standard deviation s of the logistic density, learned as exp(10 * v)."""

    def __init__(self, init_inv_s):
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(math.log(init_inv_s) / 10.0))

    def forward(self):
        return torch.exp(self.variance * 10.0).clamp(1e-6, 1e6)


class SDFModel(nn.Module):
    """The SDF network, the colour network and NeuS's sharpness (and the background NeRF of unmasked
    scenes). `appearance_views` > 0: the colour network's appearance embedding has one row per
    training view (ColorNetwork)."""

    def __init__(self, cfg, background=False, appearance_views=0):
        super().__init__()
        self.net_cfg = cfg.network
        self.sdf = SDFNetwork(cfg.encoding, cfg.network)
        self.color = ColorNetwork(cfg.network, appearance_views)
        self.sharpness = Sharpness(cfg.render.init_inv_s)
        self.background = BackgroundNeRF(samples=cfg.render.background_samples) if background else None

    @property
    def appearance_views(self):
        """Rows of the appearance embedding; 0 without one."""
        return 0 if self.color.appearance is None else self.color.appearance.shape[0]

    def match_appearance(self, state):
        """Give the colour network the appearance embedding (present or not, rows x numbers) of the
        state_dict `state`, so that it loads: a checkpoint is the truth about what was trained (a job
        from before the embedding existed has none). Returns True when the network was rebuilt (its
        weights are then new: load the state next, and rebuild the optimiser)."""
        table = state.get("color.appearance")
        current = self.color.appearance
        if (table is None) == (current is None) and (table is None or table.shape == current.shape):
            return False
        cfg = self.net_cfg if table is None else dataclasses.replace(self.net_cfg, appearance_dim=table.shape[1])
        color = ColorNetwork(cfg, 0 if table is None else table.shape[0])
        color.amp_dtype = self.color.amp_dtype
        self.color = color.to(self.sharpness.variance.device)
        return True

    def set_mixed_precision(self, dtype):
        """Run the colour and background MLPs under autocast at `dtype` (None: full precision). The SDF
        stays in float32: its gradient and Laplacian are differences of values eps apart, which half
        precision would drown in rounding."""
        self.color.amp_dtype = dtype
        if self.background is not None:
            self.background.amp_dtype = dtype

    def param_groups(self, train_cfg):
        """The optimiser's groups; train.grid_weight_decay on the tables alone, or on every group with
        train.weight_decay_on=all (as Neuralangelo's AdamW does)."""
        decay = train_cfg.grid_weight_decay
        rest = decay if train_cfg.weight_decay_on == "all" else 0.0
        groups = [
            {"params": self.sdf.grid.table_parameters(), "lr": train_cfg.lr, "name": "grid", "weight_decay": decay},
            {"params": list(self.sdf.layers.parameters()) + list(self.color.mlp.parameters())
             + (list(self.background.parameters()) if self.background is not None else []),
             "lr": train_cfg.lr, "name": "mlp", "weight_decay": rest},
            {"params": list(self.sharpness.parameters()), "lr": train_cfg.lr_variance, "name": "variance",
             "weight_decay": rest},
        ]
        if self.color.appearance is not None:
            groups.append({"params": [self.color.appearance], "lr": train_cfg.lr, "name": "appearance",
                           "weight_decay": rest})
        return groups
