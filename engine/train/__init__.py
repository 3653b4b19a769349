"""Training: the static trainer's loop, its losses, schedules and checkpoints, and the dynamic
sequence trainer with its rigid-motion prediction."""
