"""Image and prompt geometry shared by every layer: windows and resizing, region prompts, text boxes, mask metrics."""
