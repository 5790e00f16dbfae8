"""The keras-vit edge runtime (``infer.py``), installed as ``keras_vit.edge``.

Nothing is imported here: ``infer.py`` is a standalone script meant to be copied to a device on its own,
and ``keras-vit-infer`` runs ``keras_vit.edge.infer:main``.
"""
