"""Eight varied raw prompts shared by the parity and invariance tests."""

PROMPTS = [
    "The capital of France is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Explain the difference between TCP and UDP in 3 sentences.",
    "Once upon a time, in a small village by the sea, there lived",
    "Q: What is 17 multiplied by 23?\nA:",
    "List three colours of the rainbow:\n1.",
    "import numpy as np\n\n# Compute the mean of an array\n",
    "The quick brown fox",
]

SYSTEM_PREFIX = (
    "You are a careful assistant. Answer precisely, cite no sources, keep answers short, "
    "and never invent facts. If a question is ambiguous, say so.\n\n"
)
