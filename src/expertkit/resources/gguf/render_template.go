// Render an Ollama Modelfile TEMPLATE (Go text/template) the way Ollama does for /api/chat, so that expertkit's
// GGUF export can compare it with the tokenizer's Jinja chat template. Run by the export check:
//
//	go run render_template.go request.json   -> JSON list of rendered strings on stdout
//
// request: {"template": "...", "system": "Modelfile SYSTEM or empty", "conversations": [[{"role","content"}...]],
// "tools": [OpenAI tool objects, or null, per conversation (optional)]}.
// As Ollama: SYSTEM becomes a first system message when a conversation has none; .System is every system
// message joined by blank lines; .Messages keeps them all; .Response is empty (a prompt to generate from).
// Tools as Ollama's api types print them: `{{ .Function }}` of a tool and `{{ .Function.Arguments }}` of a tool
// call are compact JSON (Go's encoding/json, as Ollama's String methods write them).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type toolFunction struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
}

func (f toolFunction) String() string { return compact(f) }

type tool struct {
	Type     string       `json:"type"`
	Function toolFunction `json:"function"`
}

type arguments map[string]any

func (a arguments) String() string { return compact(map[string]any(a)) }

type toolCall struct {
	Function struct {
		Name      string    `json:"name"`
		Arguments arguments `json:"arguments"`
	} `json:"function"`
}

type message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	ToolCalls []toolCall `json:"tool_calls"`
}

type request struct {
	Template      string      `json:"template"`
	System        string      `json:"system"`
	Conversations [][]message `json:"conversations"`
	Tools         [][]tool    `json:"tools"`
}

func compact(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func main() {
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err)
	}
	var req request
	if err := json.Unmarshal(data, &req); err != nil {
		fail(err)
	}
	tmpl, err := template.New("TEMPLATE").Option("missingkey=zero").Parse(req.Template)
	if err != nil {
		fail(fmt.Errorf("TEMPLATE does not parse: %w", err))
	}
	var out []string
	for i, conv := range req.Conversations {
		var tools []tool
		if i < len(req.Tools) {
			tools = req.Tools[i]
		}
		if req.System != "" && (len(conv) == 0 || conv[0].Role != "system") {
			conv = append([]message{{Role: "system", Content: req.System}}, conv...)
		}
		var system []string
		var messages []any
		for _, m := range conv {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
			messages = append(messages, map[string]any{"Role": m.Role, "Content": m.Content, "ToolCalls": m.ToolCalls})
		}
		var b strings.Builder
		values := map[string]any{
			"System": strings.Join(system, "\n\n"), "Messages": messages, "Tools": tools, "Response": "",
			"Prompt": "", "Think": false, "IsThinkSet": false,
		}
		if err := tmpl.Execute(&b, values); err != nil {
			fail(fmt.Errorf("TEMPLATE does not render: %w", err))
		}
		out = append(out, b.String())
	}
	encoded, _ := json.Marshal(out)
	fmt.Println(string(encoded))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
