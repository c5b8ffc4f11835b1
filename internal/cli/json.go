package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"strconv"
	"strings"
)

// SchemaVersion is the version of every lazyfs --json output (docs/cli.md).
// It grows when a field is removed, renamed or changes meaning; new fields
// do not change it.
const SchemaVersion = 1

// WriteJSON writes v, indented, as one JSON document. An object gets
// "schemaVersion" as its first field; a list is wrapped as
// {"schemaVersion": N, "items": [...]}.
func WriteJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	switch {
	case len(b) > 0 && b[0] == '{':
		head := []byte(`{"schemaVersion":` + strconv.Itoa(SchemaVersion))
		if len(b) > 2 {
			head = append(head, ',')
		}
		b = append(head, b[1:]...)
	case len(b) > 0 && b[0] == '[':
		if b, err = json.Marshal(struct {
			SchemaVersion int             `json:"schemaVersion"`
			Items         json.RawMessage `json:"items"`
		}{SchemaVersion, b}); err != nil {
			return err
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(json.RawMessage(b))
}

// CamelCaseKeys rewrites every object key of the JSON document b from
// snake_case to camelCase ("memory_free_bytes" → "memoryFreeBytes"),
// keeping the order of keys and every value as it is. The CLI uses it to
// print documents of APIs that are snake_case on the wire (lazyfs-prewarm's)
// in its own convention.
func CamelCaseKeys(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var out bytes.Buffer
	type frame struct {
		object bool
		n      int // tokens written at this level
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			out.WriteByte(byte(d))
			if len(stack) > 0 {
				stack[len(stack)-1].n++
			}
			continue
		}
		isKey := false
		if len(stack) > 0 {
			f := &stack[len(stack)-1]
			isKey = f.object && f.n%2 == 0
			switch {
			case f.n == 0:
			case f.object && !isKey:
				out.WriteByte(':')
			default:
				out.WriteByte(',')
			}
		}
		switch t := tok.(type) {
		case json.Delim:
			out.WriteByte(byte(t))
			stack = append(stack, frame{object: t == '{'})
			continue
		case string:
			if isKey {
				t = camel(t)
			}
			kb, _ := json.Marshal(t)
			out.Write(kb)
		case json.Number:
			out.WriteString(t.String())
		default: // bool, nil
			vb, _ := json.Marshal(t)
			out.Write(vb)
		}
		if len(stack) > 0 {
			stack[len(stack)-1].n++
		}
	}
	return out.Bytes(), nil
}

// camel turns snake_case into camelCase.
func camel(s string) string {
	if !strings.Contains(s, "_") {
		return s
	}
	parts := strings.Split(s, "_")
	for i := 1; i < len(parts); i++ {
		if p := parts[i]; p != "" {
			parts[i] = strings.ToUpper(p[:1]) + p[1:]
		}
	}
	return strings.Join(parts, "")
}
