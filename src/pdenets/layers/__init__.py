"""Building blocks: activations (§3), the derivative conv (§5.1) and the blocks of Eqs. (3)-(7)."""

from pdenets.layers.activations import ACTIVATIONS, HardBall, SoftBall, create_act, hardball, softball
from pdenets.layers.derivative import PADDING_MODES, DerivativeConv
from pdenets.layers.ql_blocks import BLOCKS, QLBlock, create_block

__all__ = [
    "ACTIVATIONS", "BLOCKS", "DerivativeConv", "HardBall", "PADDING_MODES", "QLBlock", "SoftBall",
    "create_act", "create_block", "hardball", "softball",
]
