"""Benchmarks behind `stability bench`: one module per benchmark, each returning a JSON-able dict."""
