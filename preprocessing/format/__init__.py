"""The on-disk contract, the bottom layer of the project (imports nothing else of it).

* ``contract``  the frames CSV, splits, keys, member names, files of a dataset, the index schema
* ``geometry``  the one stored <-> source pixel mapping (:class:`Letterbox`)
* ``interop``   files for other readers: DALI ``.idx`` index files, ``wids`` shard lists
* ``errors``    :class:`SonostreamError`, the base of every error the project raises for bad input

Import it as ``from preprocessing import format as fmt`` and use ``fmt.NAME``: every name of the
four modules is here.
"""
from .contract import *  # noqa: F401,F403
from .contract import __all__ as _contract_names
from .errors import SonostreamError
from .geometry import Letterbox
from .interop import *  # noqa: F401,F403
from .interop import __all__ as _interop_names

__all__ = [*_contract_names, *_interop_names, "Letterbox", "SonostreamError"]
