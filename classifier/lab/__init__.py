"""The traffic lab: ground-truth captures made by real VPN daemons in network namespaces.

``vpnid lab list`` shows the scenarios, ``vpnid lab capture`` runs them; see docs/lab.md.
``classifier.lab.manifest.read_manifest`` reads the ground truth that goes with captures.
"""
