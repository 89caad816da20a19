"""fastload's test suite, a package so that its helpers import as ``tests.<dir>.<module>``
(pytest puts the checkout's root on ``sys.path`` for a package of tests; no test edits it)."""
