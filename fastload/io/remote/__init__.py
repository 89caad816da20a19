"""Reading shards from object stores: ranged GETs with retries and resumption, a block cache on
local disk, and read-ahead driven by the indices the loader will read next.

One :class:`RemoteStore` per dataset and process holds the filesystem, the retry policy, the
cache and a small thread pool; a :class:`RemoteSource` per shard is the shard reader's byte
source. The shard's blocks are the unit of caching and of verification (their XXH64 from the
shard's index); neighbouring blocks are fetched with one ranged GET (up to ``max_request``
bytes) and split. Nothing here waits for a whole shard: opening one costs two small ranged GETs
(the header, and the tail holding the index), and a record costs its block.

Modules: ``options.py`` (:class:`RemoteOptions`, fsspec options for fastload's reads),
``store.py`` (:class:`RemoteStore`), ``shard.py`` (:class:`RemoteSource`), ``readahead.py``
(a shard's blocks fetched before they are read; a densely read shard filled whole).
"""

from .options import RemoteOptions, read_fs_options
from .shard import RemoteSource
from .store import RemoteStore

__all__ = ["RemoteOptions", "RemoteStore", "RemoteSource", "read_fs_options"]
