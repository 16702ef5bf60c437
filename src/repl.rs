//! The interactive SQL prompt, with history in ~/.tidepool_history.

use anyhow::Result;
use datafusion::prelude::SessionContext;
use rustyline::error::ReadlineError;

use crate::output::Format;

pub async fn run(ctx: &SessionContext, format: Format, timing: bool) -> Result<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".tidepool_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    eprintln!("tidepool SQL. End statements with ';'. \\q to quit.");
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "tidepool> "
        } else {
            "      ... "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() && matches!(trimmed, "\\q" | "quit" | "exit") {
                    break;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if trimmed.ends_with(';') {
                    let text = std::mem::take(&mut buffer);
                    let _ = editor.add_history_entry(text.trim());
                    let mut out = std::io::stdout();
                    if let Err(e) =
                        crate::cli::run_statements(ctx, &text, format, timing, &mut out).await
                    {
                        eprintln!("error: {}", crate::describe(&e));
                    }
                }
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}
