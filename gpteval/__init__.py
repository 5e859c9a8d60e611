"""gpteval: which optimization of a GPT to ship on this hardware, and what it costs in quality.

Importing gpteval stays cheap: heavy libraries (onnxruntime, torchao, transformers,
matplotlib) are imported only where they are used.
"""

__version__ = "0.1.0"
