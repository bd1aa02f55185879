"""How an image travels from a file to the GPU.

image_folder (the files and their labels) -> decoding (bytes to uint8 pixels, on the CPU in the
loader workers or on the GPU) -> transforms (the paper's views on uint8 in the workers; float,
lighting and normalisation per batch on the device) -> datamodule (the loaders Lightning iterates).
bad_images holds what happens to a file that cannot be decoded; demo_data draws the demo dataset.
"""
