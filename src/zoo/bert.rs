//! The differentiable BERT-family encoder (BERT, MiniLM, DistilBERT).
