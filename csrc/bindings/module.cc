// The fastload._core extension module: each area registers its own functions.
#include "common.h"

NB_MODULE(_core, m) {
  m.doc() = "fastload's compiled core: hashing, checked gathers, keyed permutations, CUDA.";
  fastload::bind::register_hash(m);
  fastload::bind::register_gather(m);
  fastload::bind::register_cuda(m);
  fastload::bind::register_plan(m);
}
