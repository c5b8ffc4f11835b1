package profile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
)

// Store keeps profiles learned on a node in a directory, one file per image
// manifest digest ("sha256-HEX.json"). Writes are atomic (temp file and
// rename), so a reader never sees half a profile.
type Store struct {
	dir string
}

// NewStore returns a store in dir, creating it if needed.
func NewStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("profile store %s: %w", dir, err)
	}
	return &Store{dir: dir}, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) path(image digest.Digest) (string, error) {
	if err := image.Validate(); err != nil {
		return "", fmt.Errorf("profile store: image %q: %w", image, err)
	}
	return filepath.Join(s.dir, image.Algorithm().String()+"-"+image.Encoded()+".json"), nil
}

// Save stores p as the profile of image, replacing any previous one.
func (s *Store) Save(image digest.Digest, p *Profile) error {
	path, err := s.path(image)
	if err != nil {
		return err
	}
	b, err := p.Marshal()
	if err != nil {
		return fmt.Errorf("profile of %s: %w", image, err)
	}
	f, err := os.CreateTemp(s.dir, ".profile-*")
	if err != nil {
		return fmt.Errorf("profile of %s: %w", image, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("profile of %s: %w", image, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("profile of %s: %w", image, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("profile of %s: %w", image, err)
	}
	return nil
}

// Load returns the stored profile of image, an error wrapping ErrNotFound if
// there is none, or the parse error of a corrupt file.
func (s *Store) Load(image digest.Digest) (*Profile, error) {
	path, err := s.path(image)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("profile of %s in %s: %w", image, s.dir, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("profile of %s: %w", image, err)
	}
	defer f.Close()
	p, err := Read(f)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", path, err)
	}
	return p, nil
}

// Delete removes the stored profile of image, if any.
func (s *Store) Delete(image digest.Digest) error {
	path, err := s.path(image)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("profile of %s: %w", image, err)
	}
	return nil
}
