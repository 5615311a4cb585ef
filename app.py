"""Hugging Face Space entry point (placeholder until the Reconstruction tab lands)."""

import gradio as gr

with gr.Blocks(title="PercHead") as demo:
    gr.Markdown("# PercHead\nSingle-image 3D head reconstruction — the app is being built.")

if __name__ == "__main__":
    demo.launch(server_name="127.0.0.1", server_port=7860)
