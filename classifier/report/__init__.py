"""Reports: flows, VPN use and unregistered findings as Parquet, JSON, terminal and HTML.

``ReportBuilder(out_dir, ReportContext(...))`` takes labeled, registry-annotated flow
tables batch by batch (``add``) and writes the report directory (``finish``); see
``classifier.report.build``.
"""

from classifier.report.aggregate import VPN_USE_SCHEMA, vpn_use
from classifier.report.build import ReportBuilder, ReportContext, ReportResult

__all__ = ["VPN_USE_SCHEMA", "ReportBuilder", "ReportContext", "ReportResult", "vpn_use"]
