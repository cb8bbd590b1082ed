"""Arena CJE: Causal Judge Evaluation of LLM policies on Chatbot Arena prompts."""

__version__ = "0.1.0"
