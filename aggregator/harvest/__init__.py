"""Reading and harvesting upstream registries."""
