"""The VPN / non-VPN model: flow features in, calibrated probability, protocol guess and evidence out.

``load_model(path=None)`` loads a skops model file (default: the shipped
``models/vpnid-default.skops``); ``VpnModel.predict(table)`` scores a flow table and
``VpnModel.threshold`` is the operating point the classify pipeline compares against.
See docs/model.md.
"""

from classifier.model.io import ModelError
from classifier.model.model import Prediction, VpnModel, default_model_path, load_model

__all__ = ["ModelError", "Prediction", "VpnModel", "default_model_path", "load_model"]
