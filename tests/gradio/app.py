"""The Gradio app the Gradio engine's tests run (tests/tests/gradio.rs starts it).

Usage: python app.py PORT

Every endpoint paints a picture 8 + len(prompt) pixels wide and 24 high, and gives it back
in one of the shapes Gradio apps answer with:

  predict       a gr.Image output (FileData: url and path)
  data_url      a data: URL string
  relative_url  a file URL relative to the app
  path_only     an object with a path and no url
  slow          predict after a 20 s sleep (the engine's timeout)

Prompts starting with `fail` raise gr.Error (the app refuses the input), with `crash` an
unexpected exception. The app exits when its standard input closes (the test process
ended), so a test run leaves no server behind.
"""
import base64
import io
import os
import sys
import tempfile
import threading
import time

import gradio as gr
from PIL import Image

FILES = tempfile.mkdtemp(prefix="studio-gradio-test-")


def paint(prompt):
    if prompt.startswith("fail"):
        raise gr.Error("the app refuses this prompt")
    if prompt.startswith("crash"):
        raise ValueError("an unexpected bug in the app")
    return Image.new("RGB", (8 + len(prompt), 24), (200, 10, 30))


def png_bytes(prompt):
    buf = io.BytesIO()
    paint(prompt).save(buf, format="PNG")
    return buf.getvalue()


def saved(prompt):
    fd, path = tempfile.mkstemp(suffix=".png", dir=FILES)
    with os.fdopen(fd, "wb") as f:
        f.write(png_bytes(prompt))
    return path


def data_url(prompt):
    return "data:image/png;base64," + base64.b64encode(png_bytes(prompt)).decode()


def relative_url(prompt):
    return "/gradio_api/file=" + saved(prompt)


def path_only(prompt):
    return {"path": saved(prompt)}


def slow(prompt):
    time.sleep(20)
    return paint(prompt)


def exit_when_stdin_closes():
    sys.stdin.read()
    os._exit(0)


with gr.Blocks() as demo:
    text = gr.Textbox()
    image = gr.Image(type="pil", format="png")
    out_text = gr.Textbox()
    out_json = gr.JSON()
    for name, fn, out in [
        ("predict", paint, image),
        ("data_url", data_url, out_text),
        ("relative_url", relative_url, out_text),
        ("path_only", path_only, out_json),
        ("slow", slow, image),
    ]:
        gr.Button(name).click(fn, text, out, api_name=name, concurrency_limit=None)

threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
demo.queue().launch(
    server_name="127.0.0.1",
    server_port=int(sys.argv[1]),
    allowed_paths=[FILES],
    show_error=False,
    quiet=True,
)
