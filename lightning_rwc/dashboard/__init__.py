"""The RWC dashboard inside TensorBoard: every layer's RWC over time at a glance, live.

Installed with the package (the ``tensorboard_plugins`` entry point), it adds an **RWC** tab to ``tensorboard``:
a heatmap of layers x measurements, each layer's curve, clusters, the depth profile and the decisions. See
:mod:`lightning_rwc.dashboard.plugin` for the routes and :mod:`lightning_rwc.dashboard.data` for what is sent.
"""
