"""What callbacks build on: the checkpoint format, schedules, distributed helpers, figures."""
