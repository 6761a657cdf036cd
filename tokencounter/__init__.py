"""tokencounter: exact token counts for self-hosted LLM traffic behind Azure API Management."""

__version__ = "0.3.1"
