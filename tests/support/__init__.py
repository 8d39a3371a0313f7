"""What the tests share: the daemon and simulator harness, promtool, the stack, the series
queries may select, the fault upstream and the README table generator."""
