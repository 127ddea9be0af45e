"""Campaign flows (imported as ``ionflow.flows``; never import this directory as ``flows``)."""
