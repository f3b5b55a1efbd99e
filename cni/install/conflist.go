package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/podidentity/podidentity/cni/pluginconf"
)

// IsConfFile reports whether the runtime reads a file of that name: containerd reads the CNI conf dir's
// .conf, .conflist and .json files (go-cni's loadFromConfDir); a .conflist is a list, a .conf or .json a
// single plugin's configuration.
func IsConfFile(name string) bool {
	switch filepath.Ext(name) {
	case ".conf", ".conflist", ".json":
		return true
	}
	return false
}

// FirstConf returns the file the runtime uses: containerd sorts the conf dir's .conf, .conflist and .json files
// lexicographically and loads only the first (max_conf_num = 1 by default). ok is false when there is none.
func FirstConf(names []string) (string, bool) {
	var confs []string
	for _, n := range names {
		if IsConfFile(n) {
			confs = append(confs, n)
		}
	}
	if len(confs) == 0 {
		return "", false
	}
	sort.Strings(confs)
	return confs[0], true
}

// ConvertedFromKey marks a conflist the installer made from a single-plugin .conf (or .json) file: its value
// is the original file's name. Unchain turns such a file back into the original, byte for byte. libcni ignores
// unknown top-level fields.
const ConvertedFromKey = "podidentity.io/converted-from"

// ChainResult is the file to write after Chain or Unchain.
type ChainResult struct {
	// Name is the file to write (may differ from the input's: a .conf becomes a .conflist and back).
	Name string
	Data []byte
	// Changed is false when the input needs no change (then Name and Data are the input's).
	Changed bool
	// Replaces is the input file's name when Name differs from it: it must be removed after Name is written.
	Replaces string
}

// Chain appends the plugin's entry to the "plugins" of a CNI configuration file, keeping every other byte of
// the file. It is idempotent: a file whose plugins already hold an entry equal to entry is unchanged, wherever
// that entry is (so that another installer appending itself after ours causes no back-and-forth); an entry
// of ours with other settings is replaced in place. A .conf or .json file (one plugin) becomes a .conflist
// whose first plugin is the original, verbatim. A file that is not a valid CNI configuration is refused, with
// what is wrong: the runtime would refuse it too.
func Chain(name string, data []byte, entry pluginconf.Entry) (ChainResult, error) {
	if entry.Type != pluginconf.PluginType {
		return ChainResult{}, fmt.Errorf("entry of type %q: want %q", entry.Type, pluginconf.PluginType)
	}
	if filepath.Ext(name) != ".conflist" {
		return convert(name, data, entry)
	}
	doc, err := scan(name, data)
	if err != nil {
		return ChainResult{}, err
	}
	ours := doc.ours()
	want, err := json.Marshal(entry)
	if err != nil {
		return ChainResult{}, err
	}
	if len(ours) == 1 && jsonEqual(doc.element(data, ours[0]), want) {
		return ChainResult{Name: name, Data: data}, nil
	}
	indent := doc.indent(data)
	rendered := renderEntry(entry, indent)
	var out []byte
	if len(ours) == 0 {
		last := doc.elems[len(doc.elems)-1]
		out = concatBytes(data[:last.end], []byte(","+indent), rendered, data[last.end:])
	} else {
		// Replace the first entry of ours in place; drop any other (from a hand edit or an older bug).
		out = doc.rebuild(data, func(i int) ([]byte, bool) {
			switch {
			case i == ours[0]:
				return rendered, true
			case slices.Contains(ours, i):
				return nil, false
			}
			return doc.element(data, i), true
		})
	}
	return ChainResult{Name: name, Data: out, Changed: true}, nil
}

// Unchain removes the plugin's entries from a CNI configuration file, keeping every other byte; a conflist
// Chain made from a .conf becomes that .conf again, byte for byte, once only its original plugin is left.
// A file without an entry of ours is unchanged.
func Unchain(name string, data []byte) (ChainResult, error) {
	if filepath.Ext(name) != ".conflist" {
		if _, err := singlePlugin(name, data); err != nil {
			return ChainResult{}, err
		}
		return ChainResult{Name: name, Data: data}, nil
	}
	doc, err := scan(name, data)
	if err != nil {
		return ChainResult{}, err
	}
	ours := doc.ours()
	if len(ours) == 0 {
		return ChainResult{Name: name, Data: data}, nil
	}
	if doc.convertedFrom != "" && len(doc.elems)-len(ours) == 1 && !slices.Contains(ours, 0) {
		// Chain wrote "[" + original + "," ...: the original's bytes, whitespace included, run from just
		// after the bracket to the first comma.
		return ChainResult{Name: doc.convertedFrom, Data: slices.Clone(data[doc.open+1 : doc.commas[0]]), Changed: true, Replaces: name}, nil
	}
	if len(ours) == len(doc.elems) {
		return ChainResult{}, fmt.Errorf("%s holds only podidentity-cni entries: it is not a network configuration of the node's primary CNI; remove the file by hand", name)
	}
	out := doc.rebuild(data, func(i int) ([]byte, bool) {
		return doc.element(data, i), !slices.Contains(ours, i)
	})
	return ChainResult{Name: name, Data: out, Changed: true}, nil
}

// HasEntry reports whether a CNI configuration file's plugins hold an entry of ours.
func HasEntry(name string, data []byte) (bool, error) {
	if filepath.Ext(name) != ".conflist" {
		_, err := singlePlugin(name, data)
		return false, err
	}
	doc, err := scan(name, data)
	if err != nil {
		return false, err
	}
	return len(doc.ours()) > 0, nil
}

// convert makes a conflist of a single-plugin file: its plugins are the original, verbatim, then ours.
func convert(name string, data []byte, entry pluginconf.Entry) (ChainResult, error) {
	conf, err := singlePlugin(name, data)
	if err != nil {
		return ChainResult{}, err
	}
	if conf.Type == pluginconf.PluginType {
		return ChainResult{}, fmt.Errorf("%s configures podidentity-cni alone: it must be chained after the node's primary CNI plugin, "+
			"not replace it; remove the file", name)
	}
	head := map[string]any{ConvertedFromKey: name}
	if conf.Name != "" {
		head["name"] = conf.Name
	}
	if conf.CNIVersion != "" {
		head["cniVersion"] = conf.CNIVersion
	}
	hb, err := json.MarshalIndent(head, "", "  ")
	if err != nil {
		return ChainResult{}, err
	}
	// {"cniVersion": ..., "name": ..., "podidentity.io/converted-from": ..., "plugins": [<original>, <ours>]}
	var b bytes.Buffer
	b.Write(hb[:len(hb)-2]) // without "\n}"
	b.WriteString(",\n  \"plugins\": [")
	b.Write(data)
	b.WriteString(",\n    ")
	b.Write(renderEntry(entry, "\n    "))
	b.WriteString("\n  ]\n}\n")
	newName := strings.TrimSuffix(name, filepath.Ext(name)) + ".conflist"
	return ChainResult{Name: newName, Data: b.Bytes(), Changed: true, Replaces: name}, nil
}

type pluginHead struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Type       string `json:"type"`
}

// singlePlugin checks a .conf/.json file as containerd does: a JSON object with a "type".
func singlePlugin(name string, data []byte) (pluginHead, error) {
	var conf pluginHead
	if err := json.Unmarshal(data, &conf); err != nil {
		return conf, fmt.Errorf("%s is not valid JSON (%w): the runtime cannot load it either; fix or replace the node's CNI configuration", name, err)
	}
	if conf.Type == "" {
		return conf, fmt.Errorf(`%s has no "type": containerd refuses it (a list of plugins belongs in a .conflist file); fix the node's CNI configuration`, name)
	}
	return conf, nil
}

// document is where a conflist's "plugins" array and its elements are in the file.
type document struct {
	open, close   int    // offsets of '[' and ']'
	elems         []span // each element's bytes
	commas        []int  // offset of the comma after element i
	types         []string
	convertedFrom string
}

type span struct{ start, end int }

func (d *document) element(data []byte, i int) []byte { return data[d.elems[i].start:d.elems[i].end] }

func (d *document) ours() []int {
	var out []int
	for i, t := range d.types {
		if t == pluginconf.PluginType {
			out = append(out, i)
		}
	}
	return out
}

// indent is the whitespace before the last element (a newline and the indentation, in a formatted file).
func (d *document) indent(data []byte) string {
	last := len(d.elems) - 1
	from := d.open + 1
	if last > 0 {
		from = d.commas[last-1] + 1
	}
	return string(data[from:d.elems[last].start])
}

// rebuild writes data with the plugins array's elements replaced by what keep returns for each (false: the
// element is dropped). Everything outside the array is kept byte for byte; inside it, the whitespace before
// the first element and after the last, and the separator that preceded each kept element in data.
func (d *document) rebuild(data []byte, keep func(i int) ([]byte, bool)) []byte {
	out := slices.Clone(data[:d.elems[0].start])
	first := true
	for i := range d.elems {
		content, ok := keep(i)
		if !ok {
			continue
		}
		if !first {
			out = append(out, data[d.elems[i-1].end:d.elems[i].start]...)
		}
		first = false
		out = append(out, content...)
	}
	return append(out, data[d.elems[len(d.elems)-1].end:]...)
}

// scan validates a conflist as libcni does (a JSON object whose "plugins" is a non-empty array of objects
// with a "type") and records where its plugins are.
func scan(name string, data []byte) (*document, error) {
	invalid := func(why string, args ...any) error {
		return fmt.Errorf("%s is not a valid CNI conflist (%s): the runtime cannot load it either; fix or replace the node's CNI configuration",
			name, fmt.Sprintf(why, args...))
	}
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		return nil, fmt.Errorf("%s is not valid JSON (%w): the runtime cannot load it either; fix or replace the node's CNI configuration", name, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, _ := dec.Token(); tok != json.Delim('{') {
		return nil, invalid("not a JSON object")
	}
	var doc *document
	var converted string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, invalid("%v", err)
		}
		key, _ := tok.(string)
		switch key {
		case "plugins":
			if doc != nil {
				return nil, invalid(`"plugins" appears twice`)
			}
			if doc, err = scanPlugins(dec, data); err != nil {
				return nil, invalid("%v", err)
			}
		case ConvertedFromKey:
			if err := dec.Decode(&converted); err != nil {
				return nil, invalid("%s: %v", ConvertedFromKey, err)
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, invalid("%v", err)
			}
		}
	}
	if doc == nil {
		return nil, invalid(`no "plugins"`)
	}
	if converted != "" && (strings.ContainsRune(converted, '/') || !IsConfFile(converted) || filepath.Ext(converted) == ".conflist") {
		return nil, invalid("%s %q is not a .conf or .json file name", ConvertedFromKey, converted)
	}
	doc.convertedFrom = converted
	return doc, nil
}

func scanPlugins(dec *json.Decoder, data []byte) (*document, error) {
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, errors.New(`"plugins" is not an array`)
	}
	doc := &document{open: int(dec.InputOffset()) - 1}
	pos := doc.open + 1
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		end := int(dec.InputOffset())
		start := pos
		for start < end && (isSpace(data[start]) || data[start] == ',') {
			if data[start] == ',' {
				doc.commas = append(doc.commas, start)
			}
			start++
		}
		var head pluginHead
		if err := json.Unmarshal(raw, &head); err != nil {
			return nil, fmt.Errorf("plugin %d is not an object", len(doc.elems))
		}
		if head.Type == "" {
			return nil, fmt.Errorf(`plugin %d has no "type"`, len(doc.elems))
		}
		doc.elems = append(doc.elems, span{start, end})
		doc.types = append(doc.types, head.Type)
		pos = end
	}
	if _, err := dec.Token(); err != nil { // ']'
		return nil, err
	}
	doc.close = int(dec.InputOffset()) - 1
	for i := pos; i < doc.close; i++ {
		if data[i] == ',' {
			return nil, errors.New(`a trailing comma in "plugins"`)
		}
	}
	if len(doc.elems) == 0 {
		return nil, errors.New(`"plugins" is empty`)
	}
	// commas[i] is the comma after element i, for every element but the last.
	return doc, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// renderEntry formats the entry for a file whose elements are separated by indent ("\n    " in a formatted
// file, "" or " " in a compact one).
func renderEntry(entry pluginconf.Entry, indent string) []byte {
	if i := strings.LastIndexByte(indent, '\n'); i >= 0 {
		b, _ := json.MarshalIndent(entry, indent[i+1:], "  ")
		return b
	}
	b, _ := json.Marshal(entry)
	return b
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && reflect.DeepEqual(x, y)
}

func concatBytes(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
