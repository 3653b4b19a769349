"""Loss and PSNR against iteration, drawn from a job's `progress` events into a PNG (JOB/curves.png).

Pillow only: the engine's Python has no matplotlib, and a picture of two lines needs none. The left
panel is the loss on a log scale, the right one the training batches' PSNR in dB.
"""
import bisect
import math
import os

from PIL import Image, ImageDraw, ImageFont

from .io import protocol

SIZE = (800, 400)
LOSS_COLOR = (31, 119, 180)
PSNR_COLOR = (214, 39, 40)
BACKGROUND = (255, 255, 255)
INK = (40, 40, 40)
GRID = (225, 225, 225)
FRAME_LINE = (190, 190, 190)
MARGINS = (62, 34, 16, 40)  # left (tick labels), top (title), right, bottom (tick labels, axis name)


def panel_box(index):
    """(left, top, right, bottom) of the plot area of panel `index` (0: loss, 1: PSNR), in pixels."""
    width = SIZE[0] // 2
    left, top, right, bottom = MARGINS
    return index * width + left, top, (index + 1) * width - right, SIZE[1] - bottom


def progress_points(events):
    """[(x, loss, psnr)] of the progress events, and the x where each frame after the first begins.

    x is the iteration; the frames of a multi-frame job follow one another along x. Within a frame the
    iteration only grows (a resumed job goes on from its checkpoint): one that does not is a fresh run
    written into the same job directory, and the history of that frame starts again from it.
    """
    frames = {}
    for event in events:
        iteration = event.get("iteration")
        if event.get("event") != protocol.PROGRESS or not isinstance(iteration, (int, float)):
            continue
        series = frames.setdefault(event.get("frame"), [])
        if series and iteration <= series[-1][0]:
            series.clear()
        series.append((iteration, event.get("loss"), event.get("psnr")))
    points, starts, offset = [], [], 0
    for series in frames.values():
        if points:
            starts.append(offset)
        points += [(offset + iteration, loss, psnr) for iteration, loss, psnr in series]
        offset += series[-1][0]
    return points, starts


def write_curves(events, path):
    """Draw the curves of `events` (dicts as protocol.read_events gives them) into the PNG `path`,
    atomically (a viewer never sees half a file). Without progress events, the picture says so."""
    image = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    points, starts = progress_points(events)
    if not points:
        _text(draw, font, (SIZE[0] / 2, SIZE[1] / 2), "no progress yet", "mm")
    else:
        x_range = (0.0, float(max(x for x, _, _ in points)) or 1.0)
        loss = [(x, math.log10(v)) for x, v, _ in points if _finite(v) and v > 0]
        psnr = [(x, float(v)) for x, _, v in points if _finite(v)]
        x_name = "iteration" + (f" ({len(starts) + 1} frames, one after another)" if starts else "")
        _panel(draw, font, 0, loss, x_range, starts, "loss (log scale)", LOSS_COLOR, log=True, x_name=x_name)
        _panel(draw, font, 1, psnr, x_range, starts, "PSNR (dB)", PSNR_COLOR, log=False, x_name=x_name)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _panel(draw, font, index, series, x_range, starts, title, color, log, x_name):
    left, top, right, bottom = box = panel_box(index)
    draw.rectangle((left, 10, left + 14, 20), fill=color)  # the legend: the line's colour by its name
    if not series:
        draw.rectangle(box, outline=INK)
        _text(draw, font, (left + 20, 15), title, "lm")
        _text(draw, font, ((left + right) / 2, (top + bottom) / 2), "no values", "mm")
        return
    last_x, last_y = series[-1]
    last = f"{10 ** last_y:.3g}" if log else f"{last_y:.2f}"
    _text(draw, font, (left + 20, 15), f"{title}: {last} at {_label(last_x)}", "lm")
    lo, hi = min(y for _, y in series), max(y for _, y in series)
    pad = (hi - lo) * 0.05 if hi > lo else 0.5
    lo, hi = lo - pad, hi + pad

    def to_pixel(x, y):
        return (left + (x - x_range[0]) / (x_range[1] - x_range[0]) * (right - left),
                bottom - (y - lo) / (hi - lo) * (bottom - top))

    for value in _nice_ticks(*x_range, smallest=1):
        px = to_pixel(value, lo)[0]
        draw.line((px, top + 1, px, bottom - 1), fill=GRID)
        draw.line((px, bottom, px, bottom + 4), fill=INK)
        _text(draw, font, (px, bottom + 6), _label(value), "mt")
    for value in (_log_ticks(lo, hi) if log else _nice_ticks(lo, hi)):
        py = to_pixel(x_range[0], math.log10(value) if log else value)[1]
        draw.line((left + 1, py, right - 1, py), fill=GRID)
        draw.line((left - 4, py, left, py), fill=INK)
        _text(draw, font, (left - 6, py), f"{value:g}", "rm")
    for x in starts:
        px = to_pixel(x, lo)[0]
        draw.line((px, top + 1, px, bottom - 1), fill=FRAME_LINE)
    draw.rectangle(box, outline=INK)  # over the grid lines that run along its edges
    _text(draw, font, ((left + right) / 2, SIZE[1] - 4), x_name, "md")
    lines = [[] for _ in range(len(starts) + 1)]  # one line per frame: x > a frame's start is past it
    for x, y in series:
        lines[bisect.bisect_left(starts, x)].append(to_pixel(x, y))
    for pixels in lines:
        if len(pixels) == 1:
            (px, py), = pixels
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=color)
        elif pixels:
            draw.line(pixels, fill=color, width=2, joint="curve")


def _nice_ticks(lo, hi, count=5, smallest=0.0):
    """Round values (1, 2 or 5 times a power of ten apart, at least `smallest`) between lo and hi,
    about `count` of them."""
    if not hi > lo:
        return [lo]
    raw = max((hi - lo) / count, smallest)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [k * step for k in range(first, last + 1)]


def _log_ticks(lo, hi):
    """Tick values for a log axis from 10**lo to 10**hi: whole decades when three or more fit, else
    the 1-2-5 values, else round steps."""
    decades = [10.0 ** k for k in range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1)]
    if len(decades) >= 3:
        return decades[::math.ceil(len(decades) / 6)]
    steps = [m * 10.0 ** k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)
             if lo - 1e-9 <= math.log10(m * 10.0 ** k) <= hi + 1e-9]
    if len(steps) >= 2:
        return steps
    return [v for v in _nice_ticks(10.0 ** lo, 10.0 ** hi, count=3) if v > 0]


def _label(value):
    """An iteration count, short: 15000 -> 15k."""
    if value >= 10000 and value % 1000 == 0:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def _text(draw, font, xy, text, anchor):
    draw.text(xy, text, fill=INK, font=font, anchor=anchor)
