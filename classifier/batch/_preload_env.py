"""Name of the environment variable that tells the fork server which model to preload."""

PRELOAD_MODEL_ENV = "VPNID_BATCH_PRELOAD_MODEL"
