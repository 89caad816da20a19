#include "jpeg_index.h"

#include <cstring>
#include <memory>

namespace fastload {

namespace {

constexpr uint8_t kMagic[4] = {'F', 'J', 'X', '1'};
constexpr int kLookBits = 9;  // codes this long or shorter are decoded by one table lookup

// One Huffman table, for decoding (libjpeg's canonical-code construction) and encoding.
struct Huffman {
  bool present = false;
  uint8_t count[17] = {0};  // codes of each length 1..16
  uint8_t symbols[256] = {0};
  int n = 0;
  int32_t maxcode[18] = {0};  // largest code of each length, -1 if none
  int32_t offset[18] = {0};   // symbols index = code + offset[length]
  uint16_t look[1 << kLookBits] = {0};  // (length << 8) | symbol, length 0: a longer code
  uint16_t code[256] = {0};             // encoding: each symbol's code and its length
  uint8_t length[256] = {0};

  bool build() {
    int k = 0;
    uint32_t next = 0;
    uint16_t codes[256];
    uint8_t lengths[256];
    for (int len = 1; len <= 16; ++len) {
      for (int i = 0; i < count[len]; ++i) {
        codes[k] = static_cast<uint16_t>(next++);
        lengths[k++] = static_cast<uint8_t>(len);
      }
      if (next > (1u << len)) return false;  // more codes than the length holds
      next <<= 1;
    }
    k = 0;
    for (int len = 1; len <= 16; ++len) {
      if (count[len]) {
        offset[len] = k - codes[k];
        k += count[len];
        maxcode[len] = codes[k - 1];
      } else {
        maxcode[len] = -1;
      }
    }
    maxcode[17] = 0x7FFFFFFF;
    std::memset(look, 0, sizeof(look));
    std::memset(length, 0, sizeof(length));
    for (int i = 0; i < n; ++i) {
      const int len = lengths[i];
      if (len <= kLookBits) {
        const int shift = kLookBits - len;
        for (int f = 0; f < (1 << shift); ++f)
          look[(codes[i] << shift) | f] = static_cast<uint16_t>((len << 8) | symbols[i]);
      }
      if (!length[symbols[i]]) {  // a symbol listed twice: libjpeg's encoder would refuse
        code[symbols[i]] = codes[i];
        length[symbols[i]] = static_cast<uint8_t>(len);
      }
    }
    return present = true;
  }
};

// Runs of AC symbols read with one lookup: for each value of the next kRunBits bits, the
// complete symbols (code and value bits) they begin with, up to and including an end of
// block. Most of a photo's AC symbols are short, so a lookup takes two to four of them.
constexpr int kRunBits = 14;
struct AcRuns {
  uint8_t bits[1 << kRunBits] = {0};       // bits those symbols take; 0: the first is longer
  uint8_t positions[1 << kRunBits] = {0};  // coefficient positions taken before an end of block
  bool ends[1 << kRunBits] = {false};      // whether they end the block

  explicit AcRuns(const Huffman& t) {
    for (int v = 0; v < (1 << kRunBits); ++v) {
      int used = 0, taken = 0;
      while (used < kRunBits) {
        // the next kLookBits bits after `used`, zeros past the window
        const int peek = ((v << used) >> (kRunBits - kLookBits)) & ((1 << kLookBits) - 1);
        const uint16_t e = t.look[peek];
        const int len = e >> 8, rs = e & 0xFF, run = rs >> 4, size = rs & 15;
        if (len == 0 || used + len + size > kRunBits) break;  // does not fit the window
        used += len + size;
        if (size == 0 && run != 15) {  // an end of block, as libjpeg reads any such symbol
          ends[v] = true;
          break;
        }
        taken += size == 0 ? 16 : run + 1;
        if (taken > 63) break;  // (never read as a run: see skip_ac)
      }
      bits[v] = static_cast<uint8_t>(used);
      positions[v] = static_cast<uint8_t>(taken > 255 ? 255 : taken);
    }
  }
};

// The runs of a table, made once per thread for the last few tables used (most JPEGs share
// their encoder's standard tables, and making the runs costs more than using them for one
// image). The least recently used goes: a scan uses at most 3 tables, so none that one JPEG's
// index is using is replaced while it is built.
const AcRuns& runs_of(const Huffman& t) {
  struct Entry {
    std::vector<uint8_t> key;  // the table's code counts and symbols
    std::unique_ptr<AcRuns> runs;
    uint64_t used = 0;
  };
  thread_local Entry cache[4];
  thread_local uint64_t clock = 0;
  std::vector<uint8_t> key(t.count, t.count + 17);
  key.insert(key.end(), t.symbols, t.symbols + t.n);
  Entry* oldest = &cache[0];
  for (Entry& e : cache) {
    if (e.runs && e.key == key) {
      e.used = ++clock;
      return *e.runs;
    }
    if (e.used < oldest->used) oldest = &e;
  }
  oldest->key = std::move(key);
  oldest->runs = std::make_unique<AcRuns>(t);
  oldest->used = ++clock;
  return *oldest->runs;
}

struct Component {
  int id = 0, h = 1, v = 1, dc = 0, ac = 0;
};

// What a decode or a rewrite needs from the markers before the entropy-coded data.
struct Header {
  int width = 0, height = 0, ncomp = 0;
  Component comp[3];
  size_t sof_height_at = 0;  // offset of the frame header's 16-bit height (width follows)
  size_t sos_at = 0;         // offset of the scan header's marker
  size_t entropy_start = 0;  // first byte after the scan header
  Huffman dc[4], ac[4];
  int mcu_h = 0, mcu_w = 0, mcus_x = 0, mcus_y = 0;
  int blocks = 0;          // blocks in an MCU
  int block_comp[10] = {0};  // each block's component
  bool first_of_comp[10] = {false};
};

inline int be16(const uint8_t* p) { return (p[0] << 8) | p[1]; }

bool parse_dht(const uint8_t* p, size_t len, Header* h) {
  size_t at = 0;
  while (at < len) {
    if (len - at < 17) return false;
    const int tc = p[at] >> 4, th = p[at] & 15;
    if (tc > 1 || th > 3) return false;
    Huffman& t = tc == 0 ? h->dc[th] : h->ac[th];
    t = Huffman();
    int total = 0;
    for (int i = 1; i <= 16; ++i) total += t.count[i] = p[at + i];
    if (total > 256 || len - at - 17 < static_cast<size_t>(total)) return false;
    std::memcpy(t.symbols, p + at + 17, static_cast<size_t>(total));
    t.n = total;
    if (!t.build()) return false;
    at += 17 + static_cast<size_t>(total);
  }
  return true;
}

bool parse_sof(const uint8_t* p, size_t len, size_t at, Header* h) {
  if (len < 6 || p[0] != 8) return false;  // 8-bit samples only
  h->height = be16(p + 1);
  h->width = be16(p + 3);
  h->ncomp = p[5];
  h->sof_height_at = at + 1;
  if (h->height == 0 || h->width == 0) return false;  // a DNL-sized frame
  if ((h->ncomp != 1 && h->ncomp != 3) || len < 6 + 3 * static_cast<size_t>(h->ncomp)) return false;
  for (int c = 0; c < h->ncomp; ++c) {
    const uint8_t* q = p + 6 + 3 * c;
    h->comp[c].id = q[0];
    h->comp[c].h = q[1] >> 4;
    h->comp[c].v = q[1] & 15;
    if (h->comp[c].h < 1 || h->comp[c].h > 4 || h->comp[c].v < 1 || h->comp[c].v > 4) return false;
  }
  return true;
}

// The scan header: every frame component, in frame order, in one full sequential scan.
bool parse_sos(const uint8_t* p, size_t len, Header* h) {
  if (len < 1 || p[0] != h->ncomp || len < 1 + 2 * static_cast<size_t>(h->ncomp) + 3) return false;
  for (int c = 0; c < h->ncomp; ++c) {
    if (p[1 + 2 * c] != h->comp[c].id) return false;
    h->comp[c].dc = p[2 + 2 * c] >> 4;
    h->comp[c].ac = p[2 + 2 * c] & 15;
    if (h->comp[c].dc > 3 || h->comp[c].ac > 3) return false;
    if (!h->dc[h->comp[c].dc].present || !h->ac[h->comp[c].ac].present) return false;
  }
  const uint8_t* s = p + 1 + 2 * h->ncomp;
  return s[0] == 0 && s[1] == 63 && s[2] == 0;  // Ss, Se, Ah/Al of a sequential scan
}

bool layout_mcus(Header* h) {
  if (h->ncomp == 1) {  // a single-component scan: one block an MCU
    if (h->comp[0].h != 1 || h->comp[0].v != 1) return false;
    h->mcu_h = h->mcu_w = 8;
    h->mcus_x = (h->width + 7) / 8;
    h->mcus_y = (h->height + 7) / 8;
    h->blocks = 1;
    h->block_comp[0] = 0;
    h->first_of_comp[0] = true;
    return true;
  }
  int hmax = 1, vmax = 1;
  for (int c = 0; c < h->ncomp; ++c) {
    hmax = h->comp[c].h > hmax ? h->comp[c].h : hmax;
    vmax = h->comp[c].v > vmax ? h->comp[c].v : vmax;
  }
  h->mcu_h = 8 * vmax;
  h->mcu_w = 8 * hmax;
  if (h->mcu_h > 32 || h->mcu_w > 32) return false;  // as libjpeg itself allows
  h->mcus_x = (h->width + h->mcu_w - 1) / h->mcu_w;
  h->mcus_y = (h->height + h->mcu_h - 1) / h->mcu_h;
  h->blocks = 0;
  for (int c = 0; c < h->ncomp; ++c) {
    for (int b = 0; b < h->comp[c].h * h->comp[c].v; ++b) {
      if (h->blocks == 10) return false;  // the JPEG limit
      h->first_of_comp[h->blocks] = b == 0;
      h->block_comp[h->blocks++] = c;
    }
  }
  return true;
}

// Markers from SOI to the end of the first scan header.
bool parse_header(const uint8_t* d, size_t n, Header* h) {
  if (n < 4 || d[0] != 0xFF || d[1] != 0xD8) return false;
  size_t at = 2;
  bool frame = false;
  while (true) {
    if (at >= n || d[at] != 0xFF) return false;
    while (at < n && d[at] == 0xFF) ++at;  // fill bytes
    if (at >= n) return false;
    const int marker = d[at++];
    if (marker == 0xD8 || marker == 0xD9 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01)
      return false;  // no scan before these
    if (n - at < 2) return false;
    const size_t len = static_cast<size_t>(be16(d + at));
    if (len < 2 || n - at < len) return false;
    const uint8_t* p = d + at + 2;
    const size_t plen = len - 2;
    if (marker == 0xC0 || marker == 0xC1) {
      if (frame || !parse_sof(p, plen, at + 2, h)) return false;
      frame = true;
    } else if (marker >= 0xC2 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 &&
               marker != 0xCC) {
      return false;  // progressive, lossless or arithmetic-coded
    } else if (marker == 0xC4) {
      if (!parse_dht(p, plen, h)) return false;
    } else if (marker == 0xCC) {
      return false;  // arithmetic conditioning
    } else if (marker == 0xDD) {
      if (plen < 2 || be16(p) != 0) return false;  // restart markers: not indexed
    } else if (marker == 0xDA) {
      if (!frame || !parse_sos(p, plen, h)) return false;
      h->sos_at = at - 2;
      h->entropy_start = at + len;
      return layout_mcus(h);
    }
    at += len;
  }
}

// Reads the entropy-coded bytes (0xFF 0x00 is a 0xFF; a marker ends the data: zeros follow,
// which must never be consumed) and knows which byte of the file each bit came from.
class BitReader {
 public:
  BitReader(const uint8_t* d, size_t n, size_t start) : d_(d), n_(n), pos_(start), pos0_(start) {}

  bool ok() const { return ok_; }

  // One block's DC difference. The coefficients are read exactly as libjpeg reads them
  // (jdhuff.c), bit for bit; a code and its value bits are taken in one step.
  int dc_diff(const Huffman& t) {
    if (bits_ < 32) fill();  // a code (16 bits at most) and its value bits (11) are there
    int len;
    const int s = symbol(t, &len);
    if (s > 11) {
      ok_ = false;
      return 0;
    }
    bits_ -= len + s;
    if (s == 0) return 0;
    const int v = static_cast<int>((buf_ >> bits_) & ((1u << s) - 1));
    return v < (1 << (s - 1)) ? v - (1 << s) + 1 : v;
  }

  // Past one block's AC coefficients (their codes and value bits): a run of symbols at a
  // time through `runs` where it stays inside the block, else one symbol at a time, each
  // taking its run and itself (libjpeg's k += r, k++) and an end of block ending it.
  void skip_ac(const Huffman& t, const AcRuns* runs) {
    int k = 1;
    while (k < 64) {
      if (bits_ < 32) fill();
      if (runs != nullptr) {
        const int v = static_cast<int>((buf_ >> (bits_ - kRunBits)) & ((1 << kRunBits) - 1));
        if (runs->bits[v] && k + runs->positions[v] <= 63) {
          bits_ -= runs->bits[v];
          if (runs->ends[v]) return;
          k += runs->positions[v];
          continue;
        }
      }
      int len;
      const int rs = symbol(t, &len);
      const int run = rs >> 4, size = rs & 15;
      bits_ -= len + size;
      if (size) {
        k += run + 1;
      } else {
        if (run != 15) return;
        k += 16;
      }
    }
  }

  // The file offset of the byte holding the next unread bit, and how many of its bits (from
  // the most significant) are already read. False where that byte lies past the data.
  bool position(size_t* offset, int* bit) {
    if (total_ == 0) fill();  // nothing read yet: the first byte must be known
    const uint64_t consumed = 8 * total_ - static_cast<uint64_t>(bits_);
    const uint64_t byte = consumed / 8;
    if (byte >= real_) return false;
    *offset = ring_[byte & 15];
    *bit = static_cast<int>(consumed % 8);
    return true;
  }

  // Whether every bit read so far came from the data (none from the zeros after its end).
  bool within_data() const { return 8 * total_ - static_cast<uint64_t>(bits_) <= 8 * real_; }

  // The file offset just past the byte of the last bit read (and its 0x00 stuffing).
  size_t end_offset() const {
    const uint64_t consumed = 8 * total_ - static_cast<uint64_t>(bits_);
    if (consumed == 0) return pos0_;
    const size_t at = ring_[((consumed - 1) / 8) & 15];
    return at + (d_[at] == 0xFF ? 2 : 1);
  }

 private:
  // The symbol of the code at the reader (not consumed: its length goes to *len). A code that
  // is not one of the table's reads as symbol 0 (an end of block) and marks the data bad.
  int symbol(const Huffman& t, int* len) {
    const uint16_t e = t.look[(buf_ >> (bits_ - kLookBits)) & ((1 << kLookBits) - 1)];
    if (e >> 8) {
      *len = e >> 8;
      return e & 0xFF;
    }
    for (int n = kLookBits + 1; n <= 16; ++n) {
      const int32_t code = static_cast<int32_t>((buf_ >> (bits_ - n)) & ((1u << n) - 1));
      if (code <= t.maxcode[n]) {
        *len = n;
        return t.symbols[code + t.offset[n]];
      }
    }
    ok_ = false;
    *len = 0;
    return 0;
  }

  void fill() {
    while (bits_ <= 56) {
      uint8_t c = 0;
      if (!ended_ && pos_ < n_) {
        c = d_[pos_];
        if (c == 0xFF && pos_ + 1 < n_ && d_[pos_ + 1] == 0x00) {
          ring_[total_ & 15] = pos_;
          pos_ += 2;
          ++real_;
        } else if (c == 0xFF) {
          ended_ = true;
          c = 0;
        } else {
          ring_[total_ & 15] = pos_++;
          ++real_;
        }
      } else {
        ended_ = true;
      }
      buf_ = (buf_ << 8) | c;
      bits_ += 8;
      ++total_;
    }
  }

  const uint8_t* d_;
  size_t n_, pos_, pos0_;
  uint64_t buf_ = 0;
  int bits_ = 0;
  uint64_t total_ = 0, real_ = 0;  // bytes taken in, and how many of them were data
  size_t ring_[16] = {0};          // file offsets of the last 16 bytes taken in
  bool ended_ = false, ok_ = true;
};

void put_u32(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_u16(std::vector<uint8_t>* out, uint16_t v) {
  out->push_back(static_cast<uint8_t>(v));
  out->push_back(static_cast<uint8_t>(v >> 8));
}
uint32_t get_u32(const uint8_t* p) {
  return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
int get_u16(const uint8_t* p) { return p[0] | (p[1] << 8); }

// The index: a 32-byte header, then one entry per indexed MCU, row by row.
//   0 "FJX1"  4 u32 JPEG size  8 u32 entropy start  12 u32 frame height offset
//   16 u16 MCU height  18 u16 MCU width  20 u16 MCU rows  22 u16 MCU columns
//   24 u8 components  25 u8 step  26 u16 zero  28 u32 entropy end
//   entry: u32 bit position (byte offset * 8 + bits of that byte already read), then the
//   DC predictor of each component (i16); all little-endian.
constexpr size_t kHeaderSize = 32;
constexpr uint32_t kMaxSize = 1u << 29;  // bit positions fit 32 bits

size_t entry_size(int ncomp) { return 4 + 2 * static_cast<size_t>(ncomp); }
int entries_per_row(int cols, int step) { return (cols + step - 1) / step; }

// Every step-th MCU of a row is indexed: at least every 4th (a crop's edge then costs at most
// 3 MCUs of decoding on each side), at most 16 entries a row (the index of a wide image stays
// small beside it).
int step_for(int cols) {
  const int step = (cols + 15) / 16;
  return step < 4 ? 4 : (step > 255 ? 255 : step);
}

// A byte of entropy-coded data: a 0xFF is followed by a stuffed 0x00.
void put_stuffed(std::vector<uint8_t>* out, uint8_t byte) {
  out->push_back(byte);
  if (byte == 0xFF) out->push_back(0x00);
}

// Appends bits, most significant first, to whole bytes (0xFF stuffing is the caller's).
class BitWriter {
 public:
  void put(uint32_t value, int nbits) {
    for (int i = nbits - 1; i >= 0; --i) {
      cur_ = static_cast<uint8_t>((cur_ << 1) | ((value >> i) & 1));
      if (++used_ == 8) {
        bytes_.push_back(cur_);
        cur_ = 0;
        used_ = 0;
      }
    }
  }
  void clear() {
    bytes_.clear();
    cur_ = 0;
    used_ = 0;
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }
  uint8_t partial() const { return cur_; }  // the last partial_bits() bits, right-aligned
  int partial_bits() const { return used_; }

 private:
  std::vector<uint8_t> bytes_;
  uint8_t cur_ = 0;
  int used_ = 0;
};

int magnitude_category(int v) {
  int a = v < 0 ? -v : v, c = 0;
  while (a) {
    ++c;
    a >>= 1;
  }
  return c;
}

// Bits of a DC difference in the stream's coding (its category's code, then its low bits),
// or -1 where the table has no code for its category.
int dc_bits(const Huffman& t, int diff) {
  const int cat = magnitude_category(diff);
  return cat > 11 || !t.length[cat] ? -1 : t.length[cat] + cat;
}

void put_dc(BitWriter* w, const Huffman& t, int diff) {
  const int cat = magnitude_category(diff);
  w->put(t.code[cat], t.length[cat]);
  if (cat) w->put(static_cast<uint32_t>(diff < 0 ? diff - 1 : diff) & ((1u << cat) - 1), cat);
}

// For each bit count mod 8, AC symbols that lengthen a block by that many bits (mod 8) in as
// few coefficient positions as possible (at most 62, so that an EOB still ends the block).
// Each symbol (run, size) is written with a value of `size` bits: the synthetic MCU's pixels
// are never used. An empty list where none is needed; false in reachable[r] where no list
// reaches r.
struct Padding {
  std::vector<uint8_t> symbols[8];
  bool reachable[8] = {false};

  explicit Padding(const Huffman& ac) {
    // Only a symbol's length mod 8 and its coefficient positions matter: keep, for each
    // length mod 8, the symbol that takes the fewest positions (8 edges, not 256).
    int edge[8], edge_positions[8];
    for (int& e : edge) e = 0;
    for (int s = 1; s < 256; ++s) {
      const int run = s >> 4, size = s & 15;
      if (!ac.length[s] || size > 10 || (size == 0 && run != 15)) continue;
      const int positions = size == 0 ? 16 : run + 1;
      const int r = (ac.length[s] + size) % 8;
      if (!edge[r] || positions < edge_positions[r]) {
        edge[r] = s;
        edge_positions[r] = positions;
      }
    }
    constexpr int kNone = 1 << 30;
    int cost[8], prev[8] = {0}, via[8] = {0};
    for (int& c : cost) c = kNone;
    cost[0] = 0;
    for (bool changed = true; changed;) {  // Bellman-Ford over the 8 residues
      changed = false;
      for (int r = 0; r < 8; ++r) {
        if (cost[r] == kNone) continue;
        for (int e = 0; e < 8; ++e) {
          if (!edge[e]) continue;
          const int to = (r + e) % 8, c = cost[r] + edge_positions[e];
          if (c < cost[to] && c <= 62) {
            cost[to] = c;
            prev[to] = r;
            via[to] = edge[e];
            changed = true;
          }
        }
      }
    }
    for (int want = 0; want < 8; ++want) {
      reachable[want] = cost[want] != kNone;
      if (!reachable[want]) continue;
      for (int r = want; r != 0; r = prev[r])
        symbols[want].insert(symbols[want].begin(), static_cast<uint8_t>(via[r]));
    }
  }
};

struct IndexView {
  const uint8_t* p;
  int ncomp, step, per_row;
  const uint8_t* entry(int row, int col) const {
    return p + kHeaderSize +
           entry_size(ncomp) * (static_cast<size_t>(row) * per_row + col / step);
  }
};

// The file offset just past the bits before bit position `pos` (a byte holding some of them
// is included, with its 0x00 stuffing); past `size` for a position outside the data.
size_t end_before(const uint8_t* data, size_t size, uint32_t pos) {
  const size_t at = pos / 8;
  if (at >= size) return size + 1;
  return pos % 8 == 0 ? at : at + (data[at] == 0xFF ? 2 : 1);
}

}  // namespace

bool build_jpeg_index(const uint8_t* data, size_t size, std::vector<uint8_t>* out,
                      bool symbol_runs) {
  out->clear();
  Header h;
  if (size >= kMaxSize || !parse_header(data, size, &h) || h.mcus_y > 0xFFFF || h.mcus_x > 0xFFFF)
    return false;
  const int step = step_for(h.mcus_x);
  const int per_row = entries_per_row(h.mcus_x, step);
  std::vector<uint8_t> index;
  index.reserve(kHeaderSize + entry_size(h.ncomp) * static_cast<size_t>(per_row) * h.mcus_y);
  index.insert(index.end(), kMagic, kMagic + 4);
  put_u32(&index, static_cast<uint32_t>(size));
  put_u32(&index, static_cast<uint32_t>(h.entropy_start));
  put_u32(&index, static_cast<uint32_t>(h.sof_height_at));
  put_u16(&index, static_cast<uint16_t>(h.mcu_h));
  put_u16(&index, static_cast<uint16_t>(h.mcu_w));
  put_u16(&index, static_cast<uint16_t>(h.mcus_y));
  put_u16(&index, static_cast<uint16_t>(h.mcus_x));
  index.push_back(static_cast<uint8_t>(h.ncomp));
  index.push_back(static_cast<uint8_t>(step));
  put_u16(&index, 0);
  put_u32(&index, 0);  // the entropy end, once known

  const AcRuns* runs[4] = {nullptr, nullptr, nullptr, nullptr};  // each AC table the scan uses
  if (symbol_runs) {
    for (int c = 0; c < h.ncomp; ++c) runs[h.comp[c].ac] = &runs_of(h.ac[h.comp[c].ac]);
  }
  BitReader in(data, size, h.entropy_start);
  int pred[3] = {0, 0, 0};
  for (int row = 0; row < h.mcus_y; ++row) {
    for (int x = 0; x < h.mcus_x; ++x) {
      if (x % step == 0) {
        size_t offset;
        int bit;
        if (!in.position(&offset, &bit)) return false;
        put_u32(&index, static_cast<uint32_t>(offset * 8 + bit));
        for (int c = 0; c < h.ncomp; ++c) put_u16(&index, static_cast<uint16_t>(pred[c]));
      }
      for (int b = 0; b < h.blocks; ++b) {
        const Component& comp = h.comp[h.block_comp[b]];
        int& p = pred[h.block_comp[b]];
        p += in.dc_diff(h.dc[comp.dc]);
        if (p < -32768 || p > 32767) return false;
        in.skip_ac(h.ac[comp.ac], runs[comp.ac]);
      }
      if (!in.ok()) return false;
    }
  }
  if (!in.within_data()) return false;
  const uint32_t end = static_cast<uint32_t>(in.end_offset());
  for (int i = 0; i < 4; ++i) index[28 + i] = static_cast<uint8_t>(end >> (8 * i));
  *out = std::move(index);
  return true;
}

JpegGrid jpeg_index_grid(const uint8_t* index, size_t index_size) {
  JpegGrid g;
  if (index == nullptr || index_size < kHeaderSize || std::memcmp(index, kMagic, 4) != 0)
    return g;
  const int mcu_h = get_u16(index + 16), mcu_w = get_u16(index + 18);
  const int rows = get_u16(index + 20), cols = get_u16(index + 22), step = index[25];
  const int ncomp = index[24];
  auto size_ok = [](int v) { return v == 8 || v == 16 || v == 24 || v == 32; };
  if (!size_ok(mcu_h) || !size_ok(mcu_w) || rows < 1 || cols < 1 || step < 1 ||
      (ncomp != 1 && ncomp != 3) ||
      index_size != kHeaderSize + entry_size(ncomp) * static_cast<size_t>(rows) *
                                      entries_per_row(cols, step))
    return g;
  g.mcu_h = mcu_h;
  g.mcu_w = mcu_w;
  g.rows = rows;
  g.cols = cols;
  g.step = step;
  return g;
}

bool jpeg_window(const uint8_t* data, size_t size, const uint8_t* index, size_t index_size,
                 int row0, int row1, int col0, int col1, std::vector<uint8_t>* out,
                 JpegWindow* window) {
  out->clear();
  const JpegGrid g = jpeg_index_grid(index, index_size);
  if (g.step == 0) return false;
  Header h;
  if (!parse_header(data, size, &h)) return false;
  // The index must be this JPEG's: same size, same layout.
  if (get_u32(index + 4) != size || get_u32(index + 8) != h.entropy_start ||
      get_u32(index + 12) != h.sof_height_at || g.mcu_h != h.mcu_h || g.mcu_w != h.mcu_w ||
      g.rows != h.mcus_y || g.cols != h.mcus_x || index[24] != h.ncomp)
    return false;
  const size_t entropy_end = get_u32(index + 28);
  if (entropy_end <= h.entropy_start || entropy_end > size) return false;
  if (row0 < 0 || row0 >= row1 || row1 > g.rows || col0 < 0 || col0 >= col1 || col1 > g.cols ||
      col0 % g.step != 0 || (col1 != g.cols && col1 % g.step != 0))
    return false;
  const IndexView view{index, h.ncomp, g.step, entries_per_row(g.cols, g.step)};

  const int mcus = 1 + col1 - col0;  // a window row, and the restart interval
  const int height = row1 == g.rows ? h.height - row0 * h.mcu_h : (row1 - row0) * h.mcu_h;
  const int width = col1 == g.cols ? h.width - (col0 - 1) * h.mcu_w : mcus * h.mcu_w;
  if (mcus > 0xFFFF || width > 0xFFFF) return false;

  // The header, with the window's size and a restart interval of one window row.
  out->reserve(size);
  out->insert(out->end(), data, data + h.sos_at);
  (*out)[h.sof_height_at] = static_cast<uint8_t>(height >> 8);
  (*out)[h.sof_height_at + 1] = static_cast<uint8_t>(height & 0xFF);
  (*out)[h.sof_height_at + 2] = static_cast<uint8_t>(width >> 8);
  (*out)[h.sof_height_at + 3] = static_cast<uint8_t>(width & 0xFF);
  const uint8_t dri[6] = {0xFF, 0xDD, 0x00, 0x04, static_cast<uint8_t>(mcus >> 8),
                          static_cast<uint8_t>(mcus & 0xFF)};
  out->insert(out->end(), dri, dri + 6);
  out->insert(out->end(), data + h.sos_at, data + h.entropy_start);

  const Huffman& pad_table = h.ac[h.comp[0].ac];
  const Padding padding(pad_table);
  BitWriter w;
  for (int row = row0; row < row1; ++row) {
    const uint8_t* e = view.entry(row, col0);
    const uint32_t pos = get_u32(e);
    const size_t from_byte = pos / 8;
    const int bit = static_cast<int>(pos % 8);
    size_t end;
    if (col1 < g.cols) {
      end = end_before(data, size, get_u32(view.entry(row, col1)));
    } else if (row + 1 < g.rows) {
      end = end_before(data, size, get_u32(view.entry(row + 1, 0)));
    } else {
      end = entropy_end;
    }
    if (from_byte < h.entropy_start || from_byte >= end || end > entropy_end) return false;
    const bool stuffed = data[from_byte] == 0xFF;
    if (stuffed && (from_byte + 1 >= size || data[from_byte + 1] != 0x00)) return false;

    // The synthetic MCU: after the restart marker every predictor is 0; the first block of
    // each component carries that component's predictor at this MCU as its DC difference,
    // the others a zero one; each block ends at once (EOB), but for the padding AC symbols
    // in the first block that make its length end where the original row starts in its byte.
    int diff[10], length = 0;
    for (int b = 0; b < h.blocks; ++b) {
      const int c = h.block_comp[b];
      diff[b] = h.first_of_comp[b] ? static_cast<int16_t>(get_u16(e + 4 + 2 * c)) : 0;
      const int n = dc_bits(h.dc[h.comp[c].dc], diff[b]);
      const Huffman& ac = h.ac[h.comp[c].ac];
      if (n < 0 || !ac.length[0]) return false;
      length += n + ac.length[0];
    }
    const int want = ((bit - length) % 8 + 8) % 8;
    if (!padding.reachable[want]) return false;
    w.clear();
    for (int b = 0; b < h.blocks; ++b) {
      const int c = h.block_comp[b];
      const Huffman& ac = h.ac[h.comp[c].ac];
      put_dc(&w, h.dc[h.comp[c].dc], diff[b]);
      if (b == 0) {
        for (uint8_t s : padding.symbols[want]) {
          w.put(pad_table.code[s], pad_table.length[s]);
          if (s & 15) w.put(1u << ((s & 15) - 1), s & 15);
        }
      }
      w.put(ac.code[0], ac.length[0]);
    }
    if (w.partial_bits() != bit) return false;
    for (uint8_t byte : w.bytes()) put_stuffed(out, byte);
    size_t from = from_byte;
    if (bit > 0) {  // the synthetic MCU's last bits and the row's first bits share a byte
      const uint8_t low = static_cast<uint8_t>(data[from_byte] & ((1u << (8 - bit)) - 1));
      put_stuffed(out, static_cast<uint8_t>((w.partial() << (8 - bit)) | low));
      from = from_byte + (stuffed ? 2 : 1);
    }
    if (from > end) return false;  // (bytes that changed since the index was built)
    out->insert(out->end(), data + from, data + end);
    if (row + 1 < row1) {
      out->push_back(0xFF);
      out->push_back(static_cast<uint8_t>(0xD0 + (row - row0) % 8));
    }
  }
  out->push_back(0xFF);
  out->push_back(0xD9);
  window->top = row0 * h.mcu_h;
  window->left = (col0 - 1) * h.mcu_w;
  window->height = height;
  window->width = width;
  window->image_height = h.height;
  window->image_width = h.width;
  return true;
}

}  // namespace fastload
