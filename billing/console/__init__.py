"""The web console for support agents and accountants: session, interface text, page state."""
