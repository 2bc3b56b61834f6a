"""Chat: templates (templates.py), a conversation whose state is carried across turns (session.py), prefix
caching (prefix_cache.py), long-document questions (summarize.py), the terminal loop (repl.py) and the
``chat`` / ``summarize`` commands (commands.py)."""
from mambakit.chat.prefix_cache import PrefixCache
from mambakit.chat.session import ChatSession, TurnStats
from mambakit.chat.templates import BUILTIN, ChatTemplate, ChatTemplateError, get_template

__all__ = ["BUILTIN", "ChatSession", "ChatTemplate", "ChatTemplateError", "PrefixCache", "TurnStats",
           "get_template"]
