// Runs every FL_TEST case linked into the executable; exit status 1 if any check failed.
#include <exception>

#include "check.h"

int main() {
  using fastload::test::cases;
  using fastload::test::failures;
  for (const auto& c : cases()) {
    const int before = failures();
    try {
      c.run();
    } catch (const std::exception& e) {
      fastload::test::fail(c.name, 0, std::string("unexpected exception: ") + e.what());
    } catch (...) {
      fastload::test::fail(c.name, 0, "unexpected exception");
    }
    std::printf("%s %s\n", failures() == before ? "ok    " : "FAILED", c.name);
  }
  std::printf("%zu cases, %d failed checks\n", cases().size(), failures());
  return failures() == 0 ? 0 : 1;
}
