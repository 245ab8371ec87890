"""Provider adapters: each turns one provider's wire format into canonical bars."""
