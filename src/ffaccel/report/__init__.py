"""Layer 8: ``ffaccel report`` — one command that qualifies a device and shows it in plots."""

from .render import render_plots, write_outputs
from .run import ReportConfig, machine_info, run_report

__all__ = ["ReportConfig", "machine_info", "render_plots", "run_report", "write_outputs"]
