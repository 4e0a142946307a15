"""The vector store backends behind `expertkit.rag.store.VectorStore`; open them with `open_store`."""
