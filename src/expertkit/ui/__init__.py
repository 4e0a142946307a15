"""The web UI (`expertkit webui`): chat, train, evaluate and export in the browser, on Gradio.

It talks to a running server over HTTP (OpenAI's /v1) and starts long work as `expertkit ...` processes of their
own, so the page stays responsive and a closed tab stops nothing. Importing it loads neither torch nor gradio.
"""
