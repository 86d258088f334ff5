"""Reading chat history back, for the chat application (``contracts.history.repository``)."""
