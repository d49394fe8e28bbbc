//! Slurm host lists: `node[01-04,07],gpu3` → `node01 node02 node03 node04 node07 gpu3`.
//!
//! The grammar of Slurm's `hostlist_expand`: hosts separated by commas outside brackets; in a
//! host, each `[...]` holds comma-separated numbers or `lo-hi` ranges, and several bracket
//! groups multiply out (`r[1-2]n[1-2]` → `r1n1 r1n2 r2n1 r2n2`). A range keeps the width of its
//! lower bound (`[08-11]` → `08 09 10 11`).

/// A host list that does not parse, naming the list and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host list {list:?}: {reason}")]
pub struct HostlistError {
    /// The whole list.
    pub list: String,
    /// What is wrong.
    pub reason: String,
}

/// The most hosts a list may expand to (a guard against `node[0-999999999]`).
pub const MAX_HOSTS: usize = 1 << 20;

/// Every host of a Slurm host list, in order.
pub fn expand_hostlist(list: &str) -> Result<Vec<String>, HostlistError> {
    let err = |reason: String| HostlistError {
        list: list.to_string(),
        reason,
    };
    let mut hosts = Vec::new();
    for item in split_top(list).map_err(err)? {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        expand_item(item, &mut hosts).map_err(err)?;
        if hosts.len() > MAX_HOSTS {
            return Err(err(format!("more than {MAX_HOSTS} hosts")));
        }
    }
    if hosts.is_empty() {
        return Err(err("no hosts".into()));
    }
    Ok(hosts)
}

/// The list cut at the commas outside brackets.
fn split_top(list: &str) -> Result<Vec<&str>, String> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err(format!("nested '[' at byte {i}")),
            ']' if depth == 1 => depth = 0,
            ']' => return Err(format!("']' without '[' at byte {i}")),
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("'[' is not closed".into());
    }
    items.push(&list[start..]);
    Ok(items)
}

/// Appends the hosts of one item (`prefix[...]middle[...]suffix`).
fn expand_item(item: &str, hosts: &mut Vec<String>) -> Result<(), String> {
    let mut partial = vec![String::new()];
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or_else(|| format!("'[' is not closed in {item:?}"))?;
        let text = &rest[..open];
        let numbers =
            expand_brackets(&rest[open + 1..close]).map_err(|e| format!("in {item:?}: {e}"))?;
        if partial.len().saturating_mul(numbers.len()) > MAX_HOSTS {
            return Err(format!("more than {MAX_HOSTS} hosts"));
        }
        partial = partial
            .iter()
            .flat_map(|p| numbers.iter().map(move |n| format!("{p}{text}{n}")))
            .collect();
        rest = &rest[close + 1..];
    }
    hosts.extend(partial.into_iter().map(|p| format!("{p}{rest}")));
    Ok(())
}

/// The numbers of one bracket group, `01-04,07`, as zero-padded strings.
fn expand_brackets(group: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in group.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let number = |s: &str| -> Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{part:?} is not a number or a range"));
            }
            s.parse::<u64>().map_err(|_| format!("{s:?} is too large"))
        };
        let (a, b) = (number(lo)?, number(hi)?);
        if b < a {
            return Err(format!("range {part:?} runs backwards"));
        }
        if (b - a) as usize >= MAX_HOSTS {
            return Err(format!("range {part:?} has more than {MAX_HOSTS} numbers"));
        }
        let width = lo.len();
        out.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &str) -> Vec<String> {
        expand_hostlist(list).unwrap()
    }

    #[test]
    fn expands_ranges_lists_and_plain_hosts() {
        assert_eq!(
            hosts("node[01-04,07],gpu3"),
            ["node01", "node02", "node03", "node04", "node07", "gpu3"]
        );
        assert_eq!(hosts("a1"), ["a1"]);
        assert_eq!(hosts("n[8-11]"), ["n8", "n9", "n10", "n11"]);
        assert_eq!(hosts("n[08-11]"), ["n08", "n09", "n10", "n11"]);
        assert_eq!(hosts("n[098-101]"), ["n098", "n099", "n100", "n101"]);
        assert_eq!(hosts("x[1-2]-ib"), ["x1-ib", "x2-ib"]);
        assert_eq!(hosts("r[1-2]n[1,3]"), ["r1n1", "r1n3", "r2n1", "r2n3"]);
        assert_eq!(
            hosts("gpu-a[1-2],gpu-b[5],c"),
            ["gpu-a1", "gpu-a2", "gpu-b5", "c"]
        );
        assert_eq!(hosts("node[3]"), ["node3"]);
    }

    #[test]
    fn bad_lists_are_errors_that_name_the_list() {
        for (list, what) in [
            ("node[01-04", "not closed"),
            ("node01-04]", "without '['"),
            ("node[4-1]", "backwards"),
            ("node[a-b]", "not a number"),
            ("node[]", "not a number"),
            ("node[[1]]", "nested"),
            ("", "no hosts"),
            (" , ", "no hosts"),
            ("n[0-99999999]", "more than"),
        ] {
            let e = expand_hostlist(list).unwrap_err();
            assert_eq!(e.list, list);
            assert!(e.to_string().contains(what), "{list:?}: {e}");
        }
    }
}
