// A tiny test harness for the C++ unit tests of csrc/core (no framework to fetch: the tests
// build offline). FL_TEST(name) { ... } defines a case; CHECK* record a failure with its line
// and go on; check_main.cc runs every case of the executable and fails if any check failed.
#pragma once

#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace fastload::test {

struct Case {
  const char* name;
  void (*run)();
};

inline std::vector<Case>& cases() {
  static std::vector<Case> all;
  return all;
}

inline int& failures() {
  static int count = 0;
  return count;
}

struct Register {
  Register(const char* name, void (*run)()) { cases().push_back({name, run}); }
};

inline void fail(const char* file, int line, const std::string& what) {
  ++failures();
  std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
}

template <class T>
std::string show(const T& value) {
  std::ostringstream s;
  if constexpr (std::is_integral_v<T> && sizeof(T) == 1) {
    s << static_cast<int>(value);
  } else {
    s << value;
  }
  return s.str();
}

}  // namespace fastload::test

#define FL_TEST(name)                                                   \
  static void name();                                                   \
  static const ::fastload::test::Register name##_registered(#name, &name); \
  static void name()

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) ::fastload::test::fail(__FILE__, __LINE__, "CHECK(" #cond ")"); \
  } while (0)

#define CHECK_EQ(a, b)                                                                   \
  do {                                                                                   \
    const auto& fl_a_ = (a);                                                             \
    const auto& fl_b_ = (b);                                                             \
    if (!(fl_a_ == fl_b_)) {                                                             \
      ::fastload::test::fail(__FILE__, __LINE__,                                         \
                             std::string(#a " == " #b ": ") + ::fastload::test::show(fl_a_) + \
                                 " != " + ::fastload::test::show(fl_b_));               \
    }                                                                                    \
  } while (0)

// `expr` throws an exception of type `Type` (or derived from it).
#define CHECK_THROWS(expr, Type)                                                         \
  do {                                                                                   \
    bool fl_thrown_ = false;                                                             \
    try {                                                                                \
      (void)(expr);                                                                      \
    } catch (const Type&) {                                                              \
      fl_thrown_ = true;                                                                 \
    } catch (...) {                                                                      \
      ::fastload::test::fail(__FILE__, __LINE__, #expr " threw something other than " #Type); \
      fl_thrown_ = true;                                                                 \
    }                                                                                    \
    if (!fl_thrown_) ::fastload::test::fail(__FILE__, __LINE__, #expr " did not throw " #Type); \
  } while (0)
