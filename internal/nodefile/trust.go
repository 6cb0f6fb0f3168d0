package nodefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// ErrUntrustedFolder means someone other than root can change a folder on
// the way to a target: they could point the target (or a link on the way)
// at any file root may write, and nodecreds, as root, would replace it.
var ErrUntrustedFolder = errors.New("someone other than root can change a folder on the way to the target")

// trustedWay refuses a name looked up on the way to a target (see
// hostfs.Walk) unless only root can change what the walk finds there: the
// folder is owned by root, and not writable by group or others; a folder
// on the way with the sticky bit (/tmp's 1777) may be, when the folder or
// link it leads through is root's, as no one else can rename or remove
// that there. The target's own folder, and a folder in which a missing one
// is to be created, must be closed: others could put a link at the name
// nodecreds is about to follow or create. The agent's own user stands for
// root where it is not root (tests).
func trustedWay(l hostfs.Lookup) error {
	self := os.Geteuid()
	rootish := func(uid int) bool { return uid == 0 || uid == self }
	folder := fmt.Sprintf("%s (uid %d, mode %04o)", l.Folder, l.Info.UID, uint32(l.Info.Mode))
	closed := l.Kind == hostfs.Final || l.Kind == hostfs.Create
	const sticky = fs.FileMode(0o1000)
	switch {
	case !rootish(l.Info.UID):
		return fmt.Errorf("%w: the folder %s is owned by uid %d, who can make nodecreds write wherever root may; fix: chown root %s (and chmod go-w), or choose a target in a folder only root can change", ErrUntrustedFolder, folder, l.Info.UID, l.Folder)
	case l.Info.Mode&0o022 == 0:
		return nil
	case closed:
		return fmt.Errorf("%w: the folder %s is writable by group or others, who can put a link at %s; fix: chmod go-w %s, or choose a target in a folder only root can change", ErrUntrustedFolder, folder, l.Name, l.Folder)
	case l.Info.Mode&sticky == 0:
		return fmt.Errorf("%w: the folder %s is writable by group or others, who can replace %s in it; fix: chmod go-w %s (or +t)", ErrUntrustedFolder, folder, l.Name, l.Folder)
	case l.Entry != nil && !rootish(l.Entry.UID):
		return fmt.Errorf("%w: %s in the sticky folder %s is owned by uid %d, who can replace it; fix: chown root it, or choose a target in a folder only root can change", ErrUntrustedFolder, l.Name, folder, l.Entry.UID)
	}
	return nil
}
