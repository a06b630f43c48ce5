"""recneg benchmarks (not part of the test suite). Each script writes JSON + Markdown under results/."""
