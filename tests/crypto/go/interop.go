// Command interop checks Coalition's signed notes, checkpoints and Merkle proofs with Go's
// golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog: an independent
// implementation of the same specifications (C2SP signed-note, tlog-checkpoint, RFC 6962).
//
// It reads one JSON request on stdin.
//
//	{"mode": "verify", "verifier_key": ..., "note": ..., "origin": ...,
//	 "inclusion": [{"leaf": b64, "index": n, "proof": [b64, ...]}, ...],
//	 "consistency": [{"old_size": n, "old_root": b64, "proof": [b64, ...]}, ...]}
//
// verifies the note with the verifier key, parses its checkpoint body, and checks every
// inclusion proof (of the leaf data, hashed with tlog.RecordHash) and consistency proof
// against the checkpoint's size and root. It prints "ok" and exits 0, or prints the first
// failure on stderr and exits 1.
//
//	{"mode": "sign", "name": ..., "text": ...}
//
// generates a fresh key with note.GenerateKey, signs the text with note.Sign, and prints
// {"verifier_key": ..., "note": ...}.
package main

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusion struct {
	Leaf  []byte      `json:"leaf"`
	Index int64       `json:"index"`
	Proof []tlog.Hash `json:"proof"`
}

type consistency struct {
	OldSize int64       `json:"old_size"`
	OldRoot tlog.Hash   `json:"old_root"`
	Proof   []tlog.Hash `json:"proof"`
}

type request struct {
	Mode        string        `json:"mode"`
	VerifierKey string        `json:"verifier_key"`
	Note        string        `json:"note"`
	Origin      string        `json:"origin"`
	Inclusion   []inclusion   `json:"inclusion"`
	Consistency []consistency `json:"consistency"`
	Name        string        `json:"name"`
	Text        string        `json:"text"`
}

type signed struct {
	VerifierKey string `json:"verifier_key"`
	Note        string `json:"note"`
}

func main() {
	var req request
	dec := json.NewDecoder(os.Stdin)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		fail(fmt.Errorf("bad request: %v", err))
	}
	switch req.Mode {
	case "verify":
		if err := verify(&req); err != nil {
			fail(err)
		}
		fmt.Println("ok")
	case "sign":
		out, err := sign(&req)
		if err != nil {
			fail(err)
		}
		if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
			fail(err)
		}
	default:
		fail(fmt.Errorf("unknown mode %q", req.Mode))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func verify(req *request) error {
	v, err := note.NewVerifier(req.VerifierKey)
	if err != nil {
		return fmt.Errorf("verifier key: %v", err)
	}
	n, err := note.Open([]byte(req.Note), note.VerifierList(v))
	if err != nil {
		return fmt.Errorf("note: %v", err)
	}
	origin, size, root, err := parseCheckpoint(n.Text)
	if err != nil {
		return err
	}
	if req.Origin != "" && origin != req.Origin {
		return fmt.Errorf("checkpoint origin %q, want %q", origin, req.Origin)
	}
	for _, inc := range req.Inclusion {
		err := tlog.CheckRecord(inc.Proof, size, root, inc.Index, tlog.RecordHash(inc.Leaf))
		if err != nil {
			return fmt.Errorf("inclusion of leaf %d in tree of size %d: %v", inc.Index, size, err)
		}
	}
	for _, c := range req.Consistency {
		if err := tlog.CheckTree(c.Proof, size, root, c.OldSize, c.OldRoot); err != nil {
			return fmt.Errorf("consistency from size %d to %d: %v", c.OldSize, size, err)
		}
	}
	return nil
}

// parseCheckpoint parses a c2sp.org/tlog-checkpoint body: origin, size, root hash, then
// optional extension lines.
func parseCheckpoint(text string) (string, int64, tlog.Hash, error) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 || lines[0] == "" {
		return "", 0, tlog.Hash{}, errors.New("malformed checkpoint")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return "", 0, tlog.Hash{}, fmt.Errorf("malformed checkpoint size %q", lines[1])
	}
	root, err := tlog.ParseHash(lines[2])
	if err != nil {
		return "", 0, tlog.Hash{}, fmt.Errorf("malformed checkpoint root: %v", err)
	}
	return lines[0], size, root, nil
}

func sign(req *request) (*signed, error) {
	skey, vkey, err := note.GenerateKey(rand.Reader, req.Name)
	if err != nil {
		return nil, err
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, err
	}
	msg, err := note.Sign(&note.Note{Text: req.Text}, s)
	if err != nil {
		return nil, err
	}
	return &signed{VerifierKey: vkey, Note: string(msg)}, nil
}
