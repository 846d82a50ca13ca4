"""The WKV operators: a slow reference loop beside each fast form, one module per RWKV version."""
