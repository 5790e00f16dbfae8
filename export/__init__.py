"""The keras-vit edge runtime (``infer.py``), installed as the top-level package ``keras_vit_edge``.

Nothing is imported here: ``infer.py`` is a standalone script meant to be copied to a device on its own,
and ``keras-vit-infer`` runs ``keras_vit_edge.infer:main``. It is not part of the ``keras_vit`` library
(importing that would import Keras); its numpy copy of the preprocessing contract is tested against
:mod:`keras_vit.preprocessing` in ``tests/test_preprocessing.py``.
"""
