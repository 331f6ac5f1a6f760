"""The leaderboard: one self-contained HTML file from any number of `evalkit run` folders."""

from evalkit.report.render import build_report

__all__ = ["build_report"]
