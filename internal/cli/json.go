package cli

import (
	"encoding/json"
	"io"
	"strconv"
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
