// The fastload._core extension module: each area registers its own functions.
#include "common.h"

NB_MODULE(_core, m) {
  m.doc() =
      "fastload's compiled core (``fastload._core``): hashing, bounds-checked gathers, keyed\n"
      "permutations, batch finishing, JPEG region decoding, CUDA queries.\n"
      "\n"
      "Buffers are any object exporting a C-contiguous buffer (bytes, bytearray, memoryview,\n"
      "mmap.mmap, numpy arrays); ``out`` buffers must also be writable. Index arrays must be 1-D\n"
      "C-contiguous numpy arrays of exactly the stated dtype (no implicit conversion: a wrong\n"
      "dtype raises TypeError). The finishing functions take arrays by DLPack (torch tensors, on\n"
      "the CPU or a CUDA device) or the buffer protocol.\n"
      "\n"
      "Every offset/length is checked before any byte is touched: a bad one raises ValueError\n"
      "naming the item and the numbers, and nothing is written. Calls with real work in them\n"
      "(>= 64 KiB of bytes or >= 1024 items) run with the GIL released.";
  fastload::bind::register_hash(m);
  fastload::bind::register_gather(m);
  fastload::bind::register_records(m);
  fastload::bind::register_cuda(m);
  fastload::bind::register_plan(m);
  fastload::bind::register_finish(m);
  fastload::bind::register_jpeg(m);
}
