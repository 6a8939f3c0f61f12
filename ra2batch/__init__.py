"""ra2batch: distributed RA2 (Sharp/van der Heijde) scoring of hand and foot radiographs."""

__version__ = "0.2.0"
