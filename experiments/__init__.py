"""flowopt's studies: one entry point each, ``flowopt-experiment STUDY --config NAME`` into ``results/STUDY/NAME/``.

``runner`` runs a study resumably, ``report`` writes its tables and figures,
``training_runs`` trains its networks, ``studies`` holds one package per study.
"""
