"""Job makers (imported as ``ionflow.makers``; never import this directory as ``makers``)."""
